"""The windowing lab: replay one stream under many windowing settings.

Modules, in the order a run uses them:

* ``grid``: the settings to compare (``LabSetting``, ``read_grid``,
  ``default_grid``).
* ``lab``: load the stream and run each setting (``load_stream``,
  ``run_setting``, ``run_grid``).
* ``schedule``: the replay schedule and its TestStream.
* ``capture``: the pipeline that records every pane.
* ``firing``: when each pane fired, derived from the schedule.
* ``measures``: latency, completeness, lateness and duplicates.
* ``prequential``: a model trained pane by pane.
* ``report``: the table, CSV, Parquet, plots and ``report.md``.

``python -m pipelines.windowing_lab`` is the command line.
"""
