"""solens.attack: semantic adversarial images from polysemous neurons, and attribute
discovery (METHOD §5.5, §5.7).

- ``mining``: words for a class pair (true c1 -> target c2) from neurons whose r_n aligns
  with text(c2) - text(c1), and the baselines' word lists;
- ``prompts``: templates (or a local language model) that show c1 with those words;
- ``generators``: text-to-image behind one interface: the synthetic world's renderer
  (text-to-scene, with ground truth) or a diffusers pipeline;
- ``evaluate``: ``attack_pair`` (``solens attack``): binary zero-shot success rates of the
  method and its baselines, filtered by ground truth, with the pair's measured reliance;
- ``discover``: ``discover_images`` (``solens discover``): words that describe an image,
  voted by its significant neurons, and their precision on the world.
"""
