"""Local Flink session clusters for running the pipelines on FlinkRunner."""
