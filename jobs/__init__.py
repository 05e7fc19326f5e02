"""The top layer: commands and jobs (`ringtrain.jobs`).

`cli` is the `ringtrain` command; `commands` runs each verb on a config (ETL, train, evaluate, predict,
retrain, models, demo) and prints its summary; `retrain`, `predict`, `doctor`, `pack` and `tracking` are the
bigger commands; `*_job.py` and `demo.py` are the spark-submit entry scripts, the same commands behind
`spark-submit jobs/<name>.py`. This layer imports the core (`ringtrain`), `ringtrain.etl` and
`ringtrain.training`; nothing below imports it.
"""
