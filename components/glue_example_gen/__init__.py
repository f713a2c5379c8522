"""GLUE ExampleGen: GLUE TSV files in the standard layout -> TFX Examples in the project's one schema."""
from components.glue_example_gen.component import GlueExampleGen, glue_input_config

__all__ = ["GlueExampleGen", "glue_input_config"]
