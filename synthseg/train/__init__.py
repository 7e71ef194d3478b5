"""Training, apart from the models it trains: the shared loop (`loop`), and one module per model
(`grounding`, `annotator`, `segmenter`, `world_t2i`, `world_dit`, `world_layout`)."""
