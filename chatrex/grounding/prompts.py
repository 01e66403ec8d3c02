"""Task prompts and fixed-form answers for ChatRex's tasks.

Every task has a family of paraphrased request templates (our own wording, at least ten each).
:func:`build_prompt` fills one: template 0 by default (deterministic), a random one when given an
``rng`` (an ``int`` seed, a :class:`random.Random` or a numpy ``Generator``), or a chosen ``template``.
The tail of each template states the answer's scope (category name only, short phrase, one sentence,
indices, ...): RegionGPT's *task-guided* instruction, so one region can be asked about at several
granularities without ambiguity.

Where the answer has a fixed form, ``*_answer`` helpers (and the :func:`build_answer` dispatcher) write
it in ChatRex's tagged format; the training-data renderer uses them, and :func:`parse_grounded`
reads every one of them back:

* detection / referring: one ``<ground>name</ground><objects><objK>…</objects>`` line per category or
  expression, in the order given. **A category with no matching box** is answered with an empty block,
  ``<ground>cat</ground><objects></objects>``, which parses to a grounding with ``indices == []``.
* region caption / region classification: ``<ground>caption</ground><objects><objK></objects>`` per
  region (trailing punctuation of the caption is dropped, as in the official outputs).
* region relation: ``<ground>left of</ground><objects><obj1><obj3></objects>``: the predicate, grounded to
  the subject and the object in that order (:func:`relation_answer`).
* counting: ``There are 3 <ground>dogs</ground><objects><obj1><obj4><obj6></objects>.``, ``There is 1
  <ground>dog</ground>…`` and, for none, ``There are no <ground>dogs</ground><objects></objects>.``
  (the number is written in digits; the category's last word is pluralised by :func:`pluralize`).
* grounded caption / conversation: free text with inline groundings (:func:`render_grounded`).

Tasks (:data:`TASKS`) and what they need:

====================== ======================================== ======================================
task                   arguments                                request example (template 0)
====================== ======================================== ======================================
detection              categories (str or list, joined "; ")    Find every person; pigeon ...
referring              expression (str or list, joined "; ")    Find the object described as ...
region_category        regions (list of box indices)            What kind of object is <obj2>? ...
region_phrase          regions                                  Sum up <obj2> in a short phrase ...
region_brief           regions                                  Give a brief description of <obj2> ...
region_sentence        regions                                  Describe <obj2> in one sentence ...
counting               categories (one)                         Count the instances of dog ...
caption_brief          -                                        Describe this picture briefly ...
caption_detailed       -                                        Describe this picture in detail ...
conversation           question (prefix form)                   Reply in grounded form. {question}
region_classification  regions, candidates (optional)           Which category does <obj2> ...
region_relation        regions (two: subject, object)           What is the relation between <obj1> ...
====================== ======================================== ======================================

**RegionGPT's task-guided region prompts.** RegionGPT asks about regions with instructions that fix
the answer's scope; here the regions are ChatRex's ``<objK>`` (a box or a mask: see
``chatrex.mllm.regions``). :data:`REGIONGPT_TASKS` maps its tasks to ours:

* region classification from a given category list → ``region_classification`` with ``candidates``;
* brief region caption → ``region_brief`` (a short description that singles the region out);
* detailed region caption → ``region_sentence`` (a full-sentence description);
* reasoning across two regions ("What is the relation between <region1> and <region2>?") →
  ``region_relation``.

``chatrex.grounding.parser`` reads the answers back into data: :func:`~chatrex.grounding.parser.read_region_captions`
(region index → caption), :func:`~chatrex.grounding.parser.read_classification` (the chosen candidate)
and :func:`~chatrex.grounding.parser.read_relation` (subject, predicate, object).
"""

from __future__ import annotations

import operator
import random
import re
from typing import Any, Iterable, Mapping, Optional, Sequence, Union

from chatrex.grounding.parser import Grounding, PHRASE_TRAILING_PUNCTUATION, render_grounded

__all__ = [
    "TASKS",
    "MAX_OBJECTS",
    "templates",
    "build_prompt",
    "build_answer",
    "detection_answer",
    "region_answer",
    "relation_answer",
    "REGIONGPT_TASKS",
    "counting_answer",
    "grounded_answer",
    "format_regions",
    "pluralize",
]

#: Largest number of boxes ChatRex takes (its vocabulary has ``<obj0>`` … ``<obj99>``).
MAX_OBJECTS = 100

_DETECTION = (
    "Find every {categories} in this image. Reply with the indices of the matching objects.",
    "Locate all instances of {categories} in the picture and answer with their object indices.",
    "Which objects in this image are {categories}? Give the object indices as your answer.",
    "Point out each {categories} you can see here, answering with object indices.",
    "Detect {categories} in the image and list the indices of the objects that match.",
    "Show me where the {categories} are in this photo. Respond with object indices.",
    "Search the image for {categories} and return the index of every matching object.",
    "I am looking for {categories} in this image. Answer with the indices of the objects.",
    "Mark all {categories} in this scene. Use object indices in the answer.",
    "Identify each occurrence of {categories} in the image; answer with object indices.",
    "Could you find the {categories} in this picture? Please answer with object indices.",
    "Spot every {categories} in the image and give me the matching object indices.",
)
_REFERRING = (
    "Find the object described as {expression}. Reply with its object index.",
    "Which object matches the description {expression}? Answer with object indices.",
    "Locate {expression} in this image and answer with the object index.",
    "Point to {expression} in the picture. Respond with the matching object indices.",
    "Where is {expression}? Give the index of the object as your answer.",
    "Ground the expression {expression} in the image, answering with object indices.",
    "Pick out {expression} in this photo and reply with its object index.",
    "Select the object that the phrase {expression} refers to. Answer with object indices.",
    "Tell me which object is {expression}, using object indices in your answer.",
    "In this image, find {expression}. Reply with the index of the matching object.",
    "Please identify {expression} and give its object index.",
)
_REGION_CATEGORY = (
    "What kind of object is {regions}? Reply with its category name only.",
    "Name the category of {regions}. Answer with just the category name.",
    "Which category does {regions} belong to? Give only the category name.",
    "What is {regions}? Answer with a category name in free form.",
    "Tell me the object class of {regions}, answering with the category name.",
    "Classify {regions} and reply with its category name.",
    "What type of thing is shown in {regions}? Respond with a category name only.",
    "Give the category label of {regions}. Use only the category name.",
    "Identify the category of {regions}; answer with the name of the category.",
    "Which object category is {regions}? A category name is enough.",
    "Label {regions} with its category name.",
)
_REGION_PHRASE = (
    "Sum up {regions} in a short phrase. Answer with a short phrase.",
    "Describe {regions} with a few words. Reply with a short phrase.",
    "Give a short phrase that describes {regions}.",
    "What is {regions}? Answer with a brief phrase rather than a sentence.",
    "Write a short descriptive phrase for {regions}.",
    "Characterise {regions} in a short phrase.",
    "How would you describe {regions} in a few words? Use a short phrase.",
    "Provide a compact phrase describing {regions}.",
    "Caption {regions} with a short phrase.",
    "Name and briefly qualify {regions}, answering with a short phrase.",
    "Offer a concise phrase about {regions}.",
)
_REGION_BRIEF = (
    "Give a brief description of {regions} that tells it apart from the other objects. Answer with a brief description.",
    "Describe {regions} briefly so that it can be singled out in the image.",
    "Write a short referring description of {regions}.",
    "How would you refer to {regions} so someone could find it? Reply with a brief description.",
    "Provide a brief, distinguishing description of {regions}.",
    "Briefly describe {regions} in a way that identifies it uniquely.",
    "Give a short referring expression for {regions}.",
    "What brief description would pick out {regions} in this scene?",
    "Describe {regions} in a few distinguishing words. Answer with a brief description.",
    "Refer to {regions} with a brief description that separates it from similar objects.",
    "Write a brief description that points to {regions} unambiguously.",
)
_REGION_SENTENCE = (
    "Describe {regions} in one sentence. Answer with a one-sentence description.",
    "Write one sentence about {regions}.",
    "Tell me about {regions} in a single sentence.",
    "Give a one-sentence description of {regions}.",
    "What can you say about {regions}? Answer in exactly one sentence.",
    "Summarise what {regions} shows in one sentence.",
    "Provide a single descriptive sentence for {regions}.",
    "Explain what {regions} is and what it is doing, in one sentence.",
    "Caption {regions} with one full sentence.",
    "Using one sentence, describe {regions}.",
    "Compose a one-sentence caption for {regions}.",
)
_COUNTING = (
    "Count the instances of {categories} in this image. Answer with the number and locate them with object indices.",
    "How many instances of {categories} does the picture contain? Give the count and the object indices.",
    "Count every {categories} you can see, then list the matching object indices.",
    "What is the number of {categories} objects in the image? Reply with the count and their indices.",
    "Tell me how many {categories} objects appear here, and ground each one with its object index.",
    "Give the count of {categories} in this photo along with the object indices of each one.",
    "How many objects of the category {categories} are there? Answer with a number and object indices.",
    "Please count the {categories} objects in the scene and mark them with object indices.",
    "Report how many {categories} objects this image shows, and locate each by its object index.",
    "Determine the number of {categories} objects present; include their object indices in the answer.",
    "Count the objects of type {categories} and answer with the total and their object indices.",
)
_CAPTION_BRIEF = (
    "Describe this picture briefly in one sentence and ground every object you mention. Answer in grounded form.",
    "Write a one-sentence caption of the image, with each mentioned object grounded.",
    "Give a short caption of this image and locate all the objects it mentions.",
    "Summarise the image in one sentence, linking each mentioned object to its boxes.",
    "Caption this photo in a single sentence and ground the objects you refer to.",
    "In one sentence, what does this image show? Ground every object you name.",
    "Provide a brief grounded caption of the picture.",
    "Briefly describe the scene and attach object indices to every object mentioned.",
    "Write a short grounded description of this image in one sentence.",
    "Give a one-line grounded caption, marking each mentioned object with its indices.",
    "Describe the image in a sentence and detect all the objects your sentence mentions.",
)
_CAPTION_DETAILED = (
    "Describe this picture in detail and ground every object you mention. Answer in grounded form.",
    "Write a detailed caption of the image, with each mentioned object grounded.",
    "Give a thorough description of this image and locate all the objects it mentions.",
    "Describe the scene at length, linking each mentioned object to its boxes.",
    "Provide a detailed grounded description of the picture.",
    "Explain everything you see in this image in detail, grounding the objects you name.",
    "Write a paragraph describing this photo and detect every object the paragraph mentions.",
    "Describe the image comprehensively and attach object indices to each mentioned object.",
    "Give a rich, detailed caption of this image in grounded form.",
    "Narrate the contents of this picture in detail and ground all mentioned objects.",
    "Offer an in-depth description of the scene, grounding each object you talk about.",
)
_CONVERSATION = (
    "Reply in grounded form. {question}",
    "Answer in grounded format, marking every object you mention. {question}",
    "Ground all objects mentioned in your answer. {question}",
    "Respond with a grounded answer. {question}",
    "Please answer and ground each object you refer to. {question}",
    "Give a grounded reply, linking objects to their indices. {question}",
    "Use grounded format for the answer. {question}",
    "Answer the following, grounding every mentioned object: {question}",
    "In your answer, ground the objects you talk about. {question}",
    "Reply with object indices attached to each mentioned object. {question}",
    "Answer with grounding. {question}",
)
_REGION_CLASSIFICATION = (
    "Which category does {regions} belong to? Answer with the category name only.",
    "Classify the object in {regions}. Reply with one category name.",
    "What is the category of {regions}? Give a single category name.",
    "Assign a category to {regions} and answer with its name only.",
    "Name the class of the object in {regions}.",
    "Tell me what category {regions} is. Only the category name, please.",
    "Determine the object category of {regions}; answer with the name.",
    "What class of object is {regions}? Reply with the class name.",
    "Categorise {regions}. Answer with a category name.",
    "Give the category name for the object at {regions}.",
    "Which object class does {regions} show? Respond with the class name alone.",
)
_REGION_CLASSIFICATION_CANDIDATES = (
    "Which of these categories does {regions} belong to: {candidates}? Answer with one of them.",
    "Classify {regions} as one of the following categories: {candidates}. Reply with the category name.",
    "Choose the category of {regions} from {candidates}. Answer with the chosen name only.",
    "From the list {candidates}, pick the category that fits {regions}.",
    "Given the candidate categories {candidates}, what is {regions}? Answer with one candidate.",
    "Select the right category for {regions} among {candidates}.",
    "Assign {regions} to one of these classes: {candidates}. Reply with the class name.",
    "Options: {candidates}. Which option names the object in {regions}?",
    "Label {regions} with one of the categories {candidates}.",
    "Out of {candidates}, which category describes {regions}? Give just the category.",
    "Categorise {regions} using only these choices: {candidates}.",
)

_REGION_RELATION = (
    "What is the relation between {region1} and {region2}? Answer with the relation, grounded to both regions.",
    "How is {region1} related to {region2}? Reply with the spatial relation of the first to the second.",
    "Describe the relation of {region1} to {region2} in a few words, grounded to the two regions.",
    "Where is {region1} with respect to {region2}? Answer with the relation only.",
    "Tell me how {region1} and {region2} are placed relative to each other, the first relative to the second.",
    "What relation holds between {region1} and {region2}? Give the relation and ground it to both regions.",
    "State the relation from {region1} to {region2}, e.g. left of, above or inside.",
    "In what relation does {region1} stand to {region2}? Reply with the relation.",
    "Explain the position of {region1} relative to {region2} with a short relation phrase.",
    "Which relation links {region1} to {region2}? Answer with the relation, grounded to the two regions.",
    "Give the relationship between {region1} and {region2}, seen from the first region.",
)

_FAMILIES: dict[str, tuple[str, ...]] = {
    "detection": _DETECTION,
    "referring": _REFERRING,
    "region_category": _REGION_CATEGORY,
    "region_phrase": _REGION_PHRASE,
    "region_brief": _REGION_BRIEF,
    "region_sentence": _REGION_SENTENCE,
    "counting": _COUNTING,
    "caption_brief": _CAPTION_BRIEF,
    "caption_detailed": _CAPTION_DETAILED,
    "conversation": _CONVERSATION,
    "region_classification": _REGION_CLASSIFICATION,
    "region_relation": _REGION_RELATION,
}
#: RegionGPT's task-guided region tasks → the task names of :func:`build_prompt`.
REGIONGPT_TASKS: dict[str, str] = {
    "classification": "region_classification",
    "brief_caption": "region_brief",
    "detailed_caption": "region_sentence",
    "relation": "region_relation",
}
#: Task names :func:`build_prompt` accepts.
TASKS: tuple[str, ...] = tuple(_FAMILIES)

#: Arguments each task needs (first set) and may take (second set).
_ARGS: dict[str, tuple[frozenset, frozenset]] = {
    "detection": (frozenset({"categories"}), frozenset()),
    "referring": (frozenset({"expression"}), frozenset()),
    "region_category": (frozenset({"regions"}), frozenset()),
    "region_phrase": (frozenset({"regions"}), frozenset()),
    "region_brief": (frozenset({"regions"}), frozenset()),
    "region_sentence": (frozenset({"regions"}), frozenset()),
    "counting": (frozenset({"categories"}), frozenset()),
    "caption_brief": (frozenset(), frozenset()),
    "caption_detailed": (frozenset(), frozenset()),
    "conversation": (frozenset({"question"}), frozenset()),
    "region_classification": (frozenset({"regions"}), frozenset({"candidates"})),
    "region_relation": (frozenset({"regions"}), frozenset()),
}

_TAG_RE = re.compile(r"</?(ground|objects|obj\d+|objfeat|image)>")


def _check_task(task: str) -> None:
    if task not in _FAMILIES:
        raise ValueError(f"unknown task {task!r}; choose one of: {', '.join(TASKS)}")


def templates(task: str, *, with_candidates: bool = False) -> tuple[str, ...]:
    """The paraphrase family of ``task`` (for ``region_classification`` with candidates, its
    candidate-list family)."""
    _check_task(task)
    if task == "region_classification" and with_candidates:
        return _REGION_CLASSIFICATION_CANDIDATES
    return _FAMILIES[task]


def _clean_name(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a string, got {type(value).__name__}")
    name = " ".join(value.split())
    if not name:
        raise ValueError(f"{what} is empty")
    if ";" in name:
        raise ValueError(f"{what} {value!r} contains ';', which separates several names in a prompt")
    if _TAG_RE.search(name):
        raise ValueError(f"{what} {value!r} contains a ChatRex tag")
    return name


def _names(value: Union[str, Sequence[str]], what: str) -> list[str]:
    items = [value] if isinstance(value, str) else list(value)
    if not items:
        raise ValueError(f"{what} is empty; give at least one")
    return [_clean_name(v, what) for v in items]


def _index(value: Any, what: str) -> int:
    try:
        k = operator.index(value)
    except TypeError:
        raise TypeError(f"{what} must be integer box indices, got {value!r}") from None
    if not 0 <= k < MAX_OBJECTS:
        raise ValueError(f"{what} index {k} is outside 0..{MAX_OBJECTS - 1} (ChatRex takes at most {MAX_OBJECTS} boxes)")
    return k


def format_regions(regions: Union[int, Iterable[int]]) -> str:
    """Box indices → region references: ``[2, 5]`` → ``"<obj2>; <obj5>"``."""
    items = [regions] if isinstance(regions, int) or hasattr(regions, "__index__") else list(regions)
    if not items:
        raise ValueError("regions is empty; give at least one box index")
    return "; ".join(f"<obj{_index(r, 'regions')}>" for r in items)


def _pick(n: int, rng: Union[None, int, random.Random, Any], template: Optional[int]) -> int:
    if template is not None:
        try:
            t = operator.index(template)
        except TypeError:
            raise TypeError(f"template must be an int, got {template!r}") from None
        if not 0 <= t < n:
            raise ValueError(f"template {t} is out of range: this task has {n} templates (0..{n - 1})")
        return t
    if rng is None:
        return 0
    if isinstance(rng, random.Random):
        return rng.randrange(n)
    if isinstance(rng, bool):
        raise TypeError("rng must be None, an int seed, a random.Random or a numpy Generator, not a bool")
    if isinstance(rng, int):
        return random.Random(rng).randrange(n)
    if hasattr(rng, "integers"):  # numpy.random.Generator
        return int(rng.integers(n))
    raise TypeError(f"rng must be None, an int seed, a random.Random or a numpy Generator, got {type(rng).__name__}")


def build_prompt(
    task: str,
    *,
    categories: Union[None, str, Sequence[str]] = None,
    expression: Union[None, str, Sequence[str]] = None,
    regions: Union[None, int, Sequence[int]] = None,
    question: Optional[str] = None,
    candidates: Optional[Sequence[str]] = None,
    rng: Union[None, int, random.Random, Any] = None,
    template: Optional[int] = None,
) -> str:
    """Write the request for ``task``.

    Args:
        task: one of :data:`TASKS`.
        categories: detection: one or several category names (joined with ``"; "``); counting: one name.
        expression: referring: one or several referring expressions (joined with ``"; "``).
        regions: region tasks: box indices, rendered ``"<obj2>; <obj5>"``; region_relation: exactly two
            distinct indices, (subject, object).
        question: conversation: the user's question (the prompt is ``prefix + " " + question``).
        candidates: region_classification: optional candidate category names (RegionGPT's
            task-guided form); without them the open-vocabulary family is used.
        rng: ``None`` → template 0 (deterministic); an ``int`` seed, :class:`random.Random` or numpy
            ``Generator`` → a random paraphrase.
        template: an explicit template index (wins over ``rng``).

    Raises:
        ValueError / TypeError: unknown task, a missing or unused argument, empty or malformed names,
            indices outside 0..99, a template index out of range.
    """
    _check_task(task)
    given = {
        name
        for name, value in (
            ("categories", categories),
            ("expression", expression),
            ("regions", regions),
            ("question", question),
            ("candidates", candidates),
        )
        if value is not None
    }
    required, optional = _ARGS[task]
    missing = required - given
    if missing:
        raise ValueError(f"task {task!r} needs {', '.join(sorted(missing))}")
    unused = given - required - optional
    if unused:
        raise ValueError(f"task {task!r} does not use {', '.join(sorted(unused))}")

    fields: dict[str, str] = {}
    if categories is not None:
        names = _names(categories, "category")
        if task == "counting" and len(names) != 1:
            raise ValueError(f"counting takes one category, got {len(names)}: {names}")
        fields["categories"] = "; ".join(names)
    if expression is not None:
        fields["expression"] = "; ".join(_names(expression, "expression"))
    if regions is not None:
        if task == "region_relation":
            pair = [regions] if isinstance(regions, int) or hasattr(regions, "__index__") else list(regions)
            if len(pair) != 2 or _index(pair[0], "regions") == _index(pair[1], "regions"):
                raise ValueError(f"region_relation takes two different regions (subject, object), got {regions!r}")
            fields["region1"], fields["region2"] = format_regions(pair[0]), format_regions(pair[1])
        else:
            fields["regions"] = format_regions(regions)
    if question is not None:
        if not isinstance(question, str) or not question.strip():
            raise ValueError("question is empty")
        fields["question"] = question.strip()
    if candidates is not None:
        fields["candidates"] = ", ".join(_names(candidates, "candidate category"))

    family = templates(task, with_candidates=candidates is not None)
    return family[_pick(len(family), rng, template)].format(**fields)


# ------------------------------------------------------------------------------------------------
# Answers in fixed forms
# ------------------------------------------------------------------------------------------------

_IRREGULAR_PLURALS = {
    "person": "people",
    "man": "men",
    "woman": "women",
    "child": "children",
    "foot": "feet",
    "tooth": "teeth",
    "goose": "geese",
    "mouse": "mice",
    "ox": "oxen",
    "knife": "knives",
    "leaf": "leaves",
    "wolf": "wolves",
    "shelf": "shelves",
    "loaf": "loaves",
    "half": "halves",
    "calf": "calves",
    "scarf": "scarves",
    "life": "lives",
    "wife": "wives",
    "potato": "potatoes",
    "tomato": "tomatoes",
    "cactus": "cacti",
}
_UNCOUNTED = {"sheep", "deer", "fish", "skis", "scissors", "glasses", "pants", "jeans", "shorts", "people", "series", "species"}


def pluralize(name: str) -> str:
    """English plural of a category name (its last word): "dog" → "dogs", "traffic light" →
    "traffic lights", "bus" → "buses", "person" → "people". Rule-based; good for category names."""
    words = name.split(" ")
    last = words[-1]
    low = last.lower()
    if not low or not low[-1].isalpha() or low in _UNCOUNTED:
        return name
    if low in _IRREGULAR_PLURALS:
        plural = _IRREGULAR_PLURALS[low]
        plural = plural.capitalize() if last[:1].isupper() else plural
    elif low.endswith(("s", "x", "z", "ch", "sh")):
        plural = last + "es"
    elif low.endswith("y") and len(low) > 1 and low[-2] not in "aeiou":
        plural = last[:-1] + "ies"
    else:
        plural = last + "s"
    return " ".join(words[:-1] + [plural])


def _block(indices: Iterable[int]) -> str:
    seen: list[int] = []
    for i in indices:
        k = _index(i, "answer")
        if k in seen:
            raise ValueError(f"box index {k} repeated in one grounding")
        seen.append(k)
    return "<objects>" + "".join(f"<obj{k}>" for k in seen) + "</objects>"


def _phrase(text: Any, what: str) -> str:
    if not isinstance(text, str):
        raise TypeError(f"{what} must be a string, got {type(text).__name__}")
    phrase = " ".join(text.split()).rstrip(PHRASE_TRAILING_PUNCTUATION + " ")
    if not phrase:
        raise ValueError(f"{what} {text!r} is empty")
    if _TAG_RE.search(phrase):
        raise ValueError(f"{what} {text!r} contains a ChatRex tag")
    return phrase


def detection_answer(detections: Mapping[str, Sequence[int]]) -> str:
    """``{"person": [10, 14], "cat": []}`` → one line per name, in order::

        <ground>person</ground><objects><obj10><obj14></objects>
        <ground>cat</ground><objects></objects>

    An empty list is the documented "none found" form. Used for detection and referring.
    """
    if not detections:
        raise ValueError("detection_answer needs at least one category")
    return "\n".join(f"<ground>{_phrase(name, 'category')}</ground>{_block(ids)}" for name, ids in detections.items())


def region_answer(captions: Union[Mapping[int, str], Sequence[tuple[int, str]]]) -> str:
    """``{2: "a brown dog."}`` → ``<ground>a brown dog</ground><objects><obj2></objects>`` (one line per
    region, trailing punctuation dropped). Used for every region caption task and classification."""
    items = list(captions.items()) if isinstance(captions, Mapping) else list(captions)
    if not items:
        raise ValueError("region_answer needs at least one region")
    return "\n".join(f"<ground>{_phrase(text, 'caption')}</ground>{_block([idx])}" for idx, text in items)


def relation_answer(subject: int, predicate: str, object: int) -> str:
    """``(1, "left of", 3)`` → ``<ground>left of</ground><objects><obj1><obj3></objects>``: the predicate,
    grounded to the subject and the object in that order (read back by
    :func:`chatrex.grounding.parser.read_relation`)."""
    if _index(subject, "subject") == _index(object, "object"):
        raise ValueError(f"a relation needs two different regions, got <obj{subject}> twice")
    return f"<ground>{_phrase(predicate, 'predicate')}</ground>{_block([subject, object])}"


def counting_answer(category: str, indices: Sequence[int]) -> str:
    """``("dog", [1, 4, 6])`` → ``There are 3 <ground>dogs</ground><objects><obj1><obj4><obj6></objects>.``;
    one → ``There is 1 <ground>dog</ground>…``; none → ``There are no <ground>dogs</ground><objects></objects>.``"""
    name = _phrase(category, "category")
    block = _block(indices)
    n = len(indices)
    if n == 1:
        return f"There is 1 <ground>{name}</ground>{block}."
    if n == 0:
        return f"There are no <ground>{pluralize(name)}</ground>{block}."
    return f"There are {n} <ground>{pluralize(name)}</ground>{block}."


def grounded_answer(text: str, groundings: Iterable[Union[Grounding, Mapping[str, Any]]]) -> str:
    """Free text with inline groundings (captions, conversation): :func:`render_grounded` with checks
    that the indices are valid box indices."""
    items = [g if isinstance(g, Grounding) else Grounding.from_dict(g) for g in groundings]
    for g in items:
        _block(g.indices)
    return render_grounded(text, items)


def build_answer(task: str, **kwargs: Any) -> str:
    """Answer in the fixed form of ``task``:

    * detection / referring: ``detections={name: [indices]}``
    * region_category / region_phrase / region_brief / region_sentence / region_classification:
      ``captions={index: text}``
    * region_relation: ``subject=int, predicate=str, object=int``
    * counting: ``category=str, indices=[...]``
    * caption_brief / caption_detailed / conversation: ``text=str, groundings=[Grounding or dict]``
    """
    _check_task(task)
    if task in ("detection", "referring"):
        return detection_answer(_kw(kwargs, task, "detections"))
    if task == "region_relation":
        return relation_answer(*_kw(kwargs, task, "subject", "predicate", "object"))
    if task.startswith("region_"):
        return region_answer(_kw(kwargs, task, "captions"))
    if task == "counting":
        return counting_answer(*_kw(kwargs, task, "category", "indices"))
    return grounded_answer(*_kw(kwargs, task, "text", "groundings"))


def _kw(kwargs: dict, task: str, *names: str):
    missing = [n for n in names if n not in kwargs]
    extra = [k for k in kwargs if k not in names]
    if missing or extra:
        raise ValueError(
            f"build_answer({task!r}) takes {', '.join(names)}"
            + (f"; missing {', '.join(missing)}" if missing else "")
            + (f"; unexpected {', '.join(extra)}" if extra else "")
        )
    values = [kwargs[n] for n in names]
    return values[0] if len(values) == 1 else values
