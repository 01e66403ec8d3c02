"""The procedural scene world: images with exact instance/part boxes, attributes and relations.

Modules: ``catalog`` (vocabulary), ``shapes`` (how each category is drawn), ``backgrounds``,
``render`` (sprites and compositing), ``scene`` (layouts, annotation, ``generate_scene``),
``splits`` (seed ranges, compositional held-out pairs), ``generate`` (writing splits to disk);
``language`` fills the texts. Import from the modules; this package imports nothing eagerly.
"""
