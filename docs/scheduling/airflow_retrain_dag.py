"""An Airflow DAG that runs `ringtrain retrain` once per day, then scores the day with the champion.

An example, not a dependency of ringtrain: copy it to your DAGs folder and adapt RINGTRAIN and CONFIG.
The exit codes of `ringtrain retrain` map onto Airflow's task states:
    0   done: promoted, champion kept, or the date was already done      -> success
    75  another retrain of the model holds its lock: retry later          -> up_for_retry (retries below)
    2   bad input or config: retrying cannot help                         -> failed, no retry (skip_on_exit_code
                                                                             is not used: a person must look)
    1   failure (training failed in every attempt, ...)                   -> up_for_retry
A task killed in the middle (a worker lost) is safe to retry: the registry changes in one atomic step at
the end, and the next run resumes the date from its record and checkpoints.
"""
from __future__ import annotations

import datetime as dt

from airflow import DAG
from airflow.exceptions import AirflowFailException
from airflow.operators.bash import BashOperator
from airflow.operators.python import PythonOperator

RINGTRAIN = "/opt/ringtrain/.venv/bin/ringtrain"
CONFIG = "/opt/ringtrain/conf/retrain.yaml"


def run_retrain(ds: str, **_):
    import subprocess
    code = subprocess.call([RINGTRAIN, "retrain", "--config", CONFIG, "--date", ds])
    if code == 2:
        raise AirflowFailException("ringtrain retrain: bad input or config (exit 2); see the task log")
    if code != 0:  # 75 (locked) and 1 (failure): Airflow retries
        raise RuntimeError(f"ringtrain retrain exited {code}")


with DAG(
    dag_id="ringtrain_retrain_churn",
    schedule="15 3 * * *",
    start_date=dt.datetime(2026, 11, 1),
    catchup=True,            # a backfill in date order; finished dates are skipped by ringtrain itself
    max_active_runs=1,       # dates in order (ringtrain's lock would make a second one exit 75 anyway)
    default_args={"retries": 3, "retry_delay": dt.timedelta(minutes=20)},
) as dag:
    retrain = PythonOperator(task_id="retrain", python_callable=run_retrain)
    score = BashOperator(
        task_id="score",
        bash_command=f"{RINGTRAIN} predict --config {CONFIG} --model champion "
                     "--input /data/churn/dt={{ ds }} --output /data/churn_scores/dt={{ ds }}",
    )
    retrain >> score
