"""Sentence templates and word choices of the scene language, as plain data.

Each entry of :data:`TEMPLATES` is one *kind* of sentence with at least five paraphrases written for
this project; ``language.py`` picks one with the caller's ``random.Random``. Slots are ``{name}``;
which slots a kind uses is listed next to it. A slot filled with a grounded phrase keeps an exact
character span (see :class:`chatrex.data.world.phrasing.GroundedText`).

Templates never state facts on their own: every fact (a count, a colour, a relation) arrives through
a slot computed from the scene record.
"""

from __future__ import annotations

TEMPLATES: dict[str, tuple[str, ...]] = {
    # ---------------------------------------------------------------- region descriptions
    # np: indefinite noun phrase with attributes (grounded); pose: "facing left"; where: relation or
    # position phrase ("to the left of the blue house", "in the top left corner of the image").
    "description": (
        "{np} {pose}, {where}.",
        "{np}, {pose}, {where}.",
        "There is {np} {where}, {pose}.",
        "{np} that is {pose} and {where}.",
        "This is {np} {pose}, located {where}.",
        "{np} {where}, {pose}.",
        "We can see {np} {pose} {where}.",
    ),
    # Same without a pose (categories drawn in one orientation only).
    "description_plain": (
        "{np} {where}.",
        "There is {np} {where}.",
        "This is {np}, located {where}.",
        "We can see {np} {where}.",
        "{np} that is {where}.",
        "{np}, which appears {where}.",
    ),
    # np: indefinite part phrase (grounded); parent: the parent's referring expression (grounded);
    # where: position inside the parent ("at the bottom left").
    "description_part": (
        "{np} {where} of {parent}.",
        "{np} belonging to {parent}, {where}.",
        "{np} that is part of {parent}, {where}.",
        "{np}, part of {parent}, {where}.",
        "{np} of {parent}, {where}.",
        "This is {np} on {parent}, {where}.",
    ),
    # ---------------------------------------------------------------- image captions
    # objects: list of counted noun phrases (each grounded); setting: "" or " on a sunny day".
    "brief": (
        "The image shows {objects}{setting}.",
        "A picture of {objects}{setting}.",
        "This scene contains {objects}{setting}.",
        "We can see {objects}{setting}.",
        "A scene with {objects}{setting}.",
        "An illustration featuring {objects}{setting}.",
    ),
    # A scene without objects (setting: as above).
    "brief_empty": (
        "An empty scene{setting}.",
        "A picture with no objects{setting}.",
        "Nothing but the background{setting}.",
        "An empty picture{setting}.",
        "A scene without any objects{setting}.",
    ),
    "detailed_empty": (
        "The image contains no objects.",
        "There are no objects in this picture.",
        "The scene is empty: only the background can be seen.",
        "No objects appear anywhere in the image.",
        "This picture shows nothing but its background.",
    ),
    # Suffix when more categories exist than the brief caption names.
    "brief_more": (
        ", among other things",
        ", along with a few other objects",
        ", plus some other objects",
        ", among other objects",
        ", together with other things",
    ),
    # counts: list of counted category phrases (each grounded to all regions of the category).
    "detailed_counts": (
        "The image contains {counts}.",
        "Altogether, the picture holds {counts}.",
        "This picture shows {counts}.",
        "The scene is made up of {counts}.",
        "In total we can see {counts}.",
        "Counting everything, the image has {counts}.",
    ),
    # group: the category's instances ("the three cars", grounded); parts: list of colour groups.
    "detailed_colors": (
        "Among {group}, there are {parts}.",
        "{group} consist of {parts}.",
        "Looking at {group}, we find {parts}.",
        "Of {group}, we have {parts}.",
        "{group} break down into {parts}.",
        "{group} include {parts}.",
    ),
    # it: the only instance of its category ("the car", grounded); adjs: "small, red and striped".
    "detailed_single": (
        "{it} is {adjs}.",
        "{it} looks {adjs}.",
        "{it} appears {adjs}.",
        "We can tell that {it} is {adjs}.",
        "{it} in the picture is {adjs}.",
        "As for {it}, it is {adjs}.",
    ),
    # subj, obj: referring expressions (grounded); pred: predicate phrase.
    "detailed_relation": (
        "{subj} is {pred} {obj}.",
        "{subj} can be found {pred} {obj}.",
        "We can see {subj} {pred} {obj}.",
        "Notice {subj} {pred} {obj}.",
        "{subj} appears {pred} {obj}.",
        "{subj} sits {pred} {obj}.",
    ),
    # parent: referring expression of a composite object (grounded); parts: list of counted parts.
    "detailed_parts": (
        "{parent} has {parts}.",
        "{parent} comes with {parts}.",
        "Looking closer, {parent} has {parts}.",
        "On {parent} one can make out {parts}.",
        "{parent} is built from parts such as {parts}.",
        "{parent} shows {parts}.",
    ),
    # ---------------------------------------------------------------- conversations
    # obj: referring expression (plain text in questions).
    "q_color": (
        "What colour is {obj}?",
        "What color is {obj}?",
        "Which colour does {obj} have?",
        "Can you tell me the colour of {obj}?",
        "What is the color of {obj}?",
        "Tell me what colour {obj} is.",
    ),
    # subj: the object (grounded); value: the colour.
    "a_color": (
        "{subj} is {value}.",
        "{subj} is {value} in colour.",
        "The colour of {subj} is {value}.",
        "{subj} appears {value}.",
        "{subj} is painted {value}.",
        "{subj} is coloured {value}.",
    ),
    "q_pattern": (
        "What pattern does {obj} have?",
        "Describe the pattern on {obj}.",
        "What kind of pattern is on {obj}?",
        "How is {obj} patterned?",
        "Which texture covers {obj}?",
        "What does the surface of {obj} look like?",
    ),
    # value: "striped" / "plain" ...
    "a_pattern": (
        "{subj} is {value}.",
        "{subj} has a {value} surface.",
        "The surface of {subj} is {value}.",
        "{subj} looks {value}.",
        "{subj} is {value} all over.",
    ),
    "q_size": (
        "How big is {obj}?",
        "What size is {obj}?",
        "Is {obj} small, medium or large?",
        "Tell me the size of {obj}.",
        "How large is {obj} in the image?",
    ),
    # value: "small" / "medium-sized" / "large".
    "a_size": (
        "{subj} is {value}.",
        "{subj} looks {value}.",
        "In terms of size, {subj} is {value}.",
        "{subj} is rather {value}.",
        "{subj} appears {value} in the picture.",
    ),
    "q_orientation": (
        "How is {obj} oriented?",
        "Which way is {obj} turned?",
        "What is the pose of {obj}?",
        "Describe how {obj} is positioned.",
        "In which direction is {obj} turned?",
    ),
    # value: pose phrase ("facing left", "tilted to the right").
    "a_orientation": (
        "{subj} is {value}.",
        "{subj} is shown {value}.",
        "We see {subj} {value}.",
        "{subj} appears {value}.",
        "{subj} is positioned {value}.",
    ),
    # plural: category plural (plain text).
    "q_count": (
        "How many {plural} are there?",
        "How many {plural} can you see?",
        "Count the {plural} in the image.",
        "What is the number of {plural} in this picture?",
        "How many {plural} does the image contain?",
        "Could you count the {plural}?",
    ),
    # count: "three trees" (grounded to all of them).
    "a_count_many": (
        "There are {count}.",
        "I can see {count}.",
        "The image contains {count}.",
        "{count} are visible.",
        "I count {count}.",
        "In total there are {count}.",
    ),
    # count: "one tree" (grounded).
    "a_count_one": (
        "There is {count}.",
        "I can see only {count}.",
        "The image contains just {count}.",
        "Only {count} is visible.",
        "I count {count}.",
        "There is exactly {count}.",
    ),
    # pred: predicate phrase; obj: referring expression (plain in the question, grounded in answers).
    "q_relation": (
        "What is {pred} {obj}?",
        "Which object is {pred} {obj}?",
        "Can you tell what is {pred} {obj}?",
        "What can be seen {pred} {obj}?",
        "Name what is {pred} {obj}.",
        "What do you see {pred} {obj}?",
    ),
    # subjs: list of indefinite noun phrases (each grounded); be: "is" / "are".
    "a_relation": (
        "{subjs} {be} {pred} {obj}.",
        "I can see {subjs} {pred} {obj}.",
        "{pred} {obj} there {be} {subjs}.",
        "{subjs} {be} located {pred} {obj}.",
        "You can find {subjs} {pred} {obj}.",
    ),
    # np: "a bicycle" (plain).
    "q_exist": (
        "Is there {np} in the image?",
        "Is there {np}?",
        "Can you see {np}?",
        "Does the picture contain {np}?",
        "Do you spot {np} anywhere?",
        "Is {np} visible in this scene?",
    ),
    # count: "a bicycle" / "two bicycles" (grounded); be: "is" / "are".
    "a_exist_yes": (
        "Yes, there {be} {count}.",
        "Yes, I can see {count}.",
        "Yes, the image contains {count}.",
        "Yes, {count} {be} visible.",
        "Indeed, there {be} {count}.",
        "Yes: {count} {be} in the picture.",
    ),
    # noun, plural: the absent category (plain); np: with article.
    "a_exist_no": (
        "No, there is no {noun}.",
        "No, I cannot see any {plural}.",
        "No, the image does not contain {np}.",
        "There is no {noun} in this picture.",
        "No, there are no {plural} here.",
        "No {plural} appear in the image.",
    ),
    # obj: referring expression (plain).
    "q_describe": (
        "Describe {obj}.",
        "What does {obj} look like?",
        "Tell me about {obj}.",
        "Can you describe {obj}?",
        "Give me a short description of {obj}.",
    ),
}

#: Predicate -> phrasings that fit after "is" ("the cup is to the left of the house").
PREDICATE_PHRASES: dict[str, tuple[str, ...]] = {
    "left of": ("to the left of", "on the left side of", "on the left of"),
    "right of": ("to the right of", "on the right side of", "on the right of"),
    "above": ("above", "over", "higher up than"),
    "below": ("below", "under", "beneath"),
    "next to": ("next to", "beside", "close to"),
    "inside": ("inside", "within", "in"),
    "in front of": ("in front of", "partly covering"),
    "behind": ("behind", "partly hidden behind"),
}

#: Orientation name -> phrasings that fit after "is" or after a noun ("a car facing left").
ORIENTATION_PHRASES: dict[str, tuple[str, ...]] = {
    "facing left": ("facing left", "pointing to the left", "turned to the left"),
    "facing right": ("facing right", "pointing to the right", "turned to the right"),
    "upright": ("upright", "standing upright", "standing straight"),
    "tilted left": ("tilted to the left", "leaning to the left", "tilted left"),
    "tilted right": ("tilted to the right", "leaning to the right", "tilted right"),
    "upside down": ("upside down", "turned upside down", "flipped upside down"),
}

#: Words for "the image" in position phrases.
IMAGE_WORDS: tuple[str, ...] = ("image", "picture", "scene")

#: (row, column) of a 3x3 grid cell -> position phrase in the image ("in the top left corner").
IMAGE_POSITIONS: dict[tuple[int, int], tuple[str, ...]] = {
    (0, 0): ("in the top left corner of the {image}", "at the top left of the {image}"),
    (0, 1): ("at the top of the {image}", "in the upper middle of the {image}"),
    (0, 2): ("in the top right corner of the {image}", "at the top right of the {image}"),
    (1, 0): ("on the left side of the {image}", "at the left of the {image}"),
    (1, 1): ("in the middle of the {image}", "near the centre of the {image}"),
    (1, 2): ("on the right side of the {image}", "at the right of the {image}"),
    (2, 0): ("in the bottom left corner of the {image}", "at the bottom left of the {image}"),
    (2, 1): ("at the bottom of the {image}", "in the lower middle of the {image}"),
    (2, 2): ("in the bottom right corner of the {image}", "at the bottom right of the {image}"),
}

#: (row, column) of a part's centre inside its parent's box -> phrase followed by "of <parent>".
PART_POSITIONS: dict[tuple[int, int], str] = {
    (0, 0): "at the top left", (0, 1): "at the top", (0, 2): "at the top right",
    (1, 0): "on the left", (1, 1): "in the middle", (1, 2): "on the right",
    (2, 0): "at the bottom left", (2, 1): "at the bottom", (2, 2): "at the bottom right",
}

#: Superlative phrasings of an ordering, for rank 1 ("the leftmost car") and rank k ("the second car
#: from the left"). ``{np}`` is the bare noun phrase, ``{nth}`` the ordinal word.
ORDINAL_PHRASES: dict[str, dict[str, tuple[str, ...]]] = {
    "left": {"first": ("the leftmost {np}", "the {np} furthest to the left", "the {np} on the far left"),
             "nth": ("the {nth} {np} from the left",)},
    "right": {"first": ("the rightmost {np}", "the {np} furthest to the right",
                        "the {np} on the far right"),
              "nth": ("the {nth} {np} from the right",)},
    "top": {"first": ("the topmost {np}", "the highest {np}", "the {np} nearest the top"),
            "nth": ("the {nth} {np} from the top",)},
    "bottom": {"first": ("the bottommost {np}", "the lowest {np}", "the {np} nearest the bottom"),
               "nth": ("the {nth} {np} from the bottom",)},
    "largest": {"first": ("the largest {np}", "the biggest {np}"),
                "nth": ("the {nth} largest {np}", "the {nth} biggest {np}")},
    "smallest": {"first": ("the smallest {np}", "the tiniest {np}"),
                 "nth": ("the {nth} smallest {np}",)},
}

#: Setting phrases appended to brief captions; ``{setting}`` is a noun phrase ("a plain background").
SETTING_PHRASES: tuple[str, ...] = (" against {setting}", " on {setting}", " in front of {setting}")

#: World background kinds (``chatrex.data.world.backgrounds.BACKGROUND_KINDS``) -> setting phrases.
BACKGROUND_SETTINGS: dict[str, tuple[str, ...]] = {
    "flat": ("a plain background", "a single-colour backdrop", "a flat background"),
    "gradient": ("a smoothly shaded background", "a gradient backdrop", "a softly fading background"),
    "noise": ("a speckled background", "a grainy backdrop", "a noisy textured background"),
    "photo": ("a photographic backdrop", "a textured photo background", "a busy photographic background"),
}
