"""ChatRex: a multimodal LLM that perceives and understands at once.

Packages:
    chatrex.upn          the Universal Proposal Network (proposes boxes)
    chatrex.mllm         the ChatRex multimodal LLM (answers with box indices)
    chatrex.grounding    grounded-answer parsing and task prompts
    chatrex.data         the procedural scene world, the data engine and training datasets
    chatrex.training     UPN and ChatRex training
    chatrex.evaluation   the paper's evaluation protocols
    chatrex.interfaces   command line, pipeline and demo
"""

__version__ = "0.1.0"

from chatrex.grounding import parse_grounded  # noqa: E402  (torch-free)

__all__ = ["parse_grounded", "__version__"]
