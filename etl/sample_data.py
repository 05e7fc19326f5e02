"""The embedded default dataset: synthetic subscription churn, generated deterministically from a seed.

Mixed numeric and categorical columns, missing values in several of them, and a binary label
drawn from a non-linear logistic model with interactions, so it is learnable but not
separable: the Bayes-optimal accuracy is about 0.80 against a majority baseline of about 0.70.
The same seed always yields the same bytes.
"""
from __future__ import annotations

import os

import numpy as np
import pandas as pd

REGIONS = ["north", "south", "east", "west", "central", "coast", "mountain", "lakes", "islands", "metro"]
PLANS = ["basic", "standard", "premium", "family"]
DEVICES = ["android", "ios", "web", "desktop", "tv"]
PAYMENTS = ["card", "debit", "paypal", "invoice", "voucher", "crypto"]


def generate_churn(rows: int, seed: int, *, drift: float = 0.0, label_noise: float = 0.0,
                   first_id: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    """Return the table (label as '0'/'1' strings, as a CSV export would have it) and P(churn).

    For daily data (scheduled retraining): `drift` in [0, 1] is a concept drift, a new churn pattern
    (paying by crypto, from 3% of customers to 3% + 37% * drift, adds 3 * drift to the logit) that a
    model trained before it cannot know; `label_noise` replaces that fraction of labels by coin
    flips (corrupted labels); `first_id` numbers the customers, so days have distinct keys.
    """
    rng = np.random.default_rng(seed)
    age = rng.integers(18, 81, rows).astype(float)
    income = np.round(rng.lognormal(10.6, 0.5, rows), 2)
    tenure = rng.integers(0, 121, rows).astype(float)
    plan = rng.choice(PLANS, rows, p=[0.4, 0.3, 0.2, 0.1])
    plan_price = pd.Series(plan).map({"basic": 25.0, "standard": 45.0, "premium": 80.0, "family": 95.0}).to_numpy()
    monthly = np.round(plan_price + rng.normal(0, 8, rows), 2)
    calls = rng.poisson(1.3, rows).astype(float)
    last_login = np.round(rng.exponential(12.0, rows), 1)
    region = rng.choice(REGIONS, rows)
    device = rng.choice(DEVICES, rows, p=[0.35, 0.3, 0.15, 0.12, 0.08])
    shares = [0.4, 0.25, 0.15, 0.1, 0.07, 0.03]
    if drift:  # crypto grows, the other methods shrink in proportion (drift 0 keeps the demo's exact bytes)
        crypto = 0.03 + 0.37 * drift
        shares = [s * (1 - crypto) / 0.97 for s in shares[:-1]] + [crypto]
    payment = rng.choice(PAYMENTS, rows, p=shares)

    region_effect = dict(zip(REGIONS, np.linspace(-0.6, 0.6, len(REGIONS))))
    logit = (
        -0.35
        + 1.1 * (calls >= 3) + 0.35 * calls
        + 1.2 * np.tanh((last_login - 15.0) / 8.0)
        - 0.025 * tenure
        + np.where(plan == "basic", 0.03 * (monthly - 25.0) + 0.5, 0.0)
        - 0.6 * (plan == "premium")
        + pd.Series(region).map(region_effect).to_numpy()
        + 1.0 * ((device == "tv") & (age > 55))
        + 0.8 * (payment == "invoice") - 0.5 * (payment == "card")
        - 0.5 * np.log(income / 40_000.0)
        + 0.012 * (age - 45.0) ** 2 / 10.0
        + 3.0 * drift * (payment == "crypto")
    )
    prob = 1.0 / (1.0 + np.exp(-logit))
    label = (rng.random(rows) < prob).astype(int)
    if label_noise:
        flipped = rng.random(rows) < label_noise
        label = np.where(flipped, rng.integers(0, 2, rows), label)

    # Missing values after the label is drawn: the signal stays in the observed columns.
    income = np.where(rng.random(rows) < 0.05, np.nan, income)
    age = np.where(rng.random(rows) < 0.02, np.nan, age)
    last_login = np.where(rng.random(rows) < 0.08, np.nan, last_login)
    device = np.where(rng.random(rows) < 0.03, None, device)

    frame = pd.DataFrame({
        "customer_id": [f"C{i:08d}" for i in range(first_id, first_id + rows)],
        "age": pd.array(np.where(np.isnan(age), None, age), dtype="Int64"),
        "income": income,
        "tenure_months": tenure.astype(int),
        "monthly_charges": monthly,
        "support_calls": calls.astype(int),
        "last_login_days": last_login,
        "region": region,
        "plan": plan,
        "device": device,
        "payment_method": payment,
        "churned": label.astype(str),
    })
    return frame, prob


def write_churn_csv(folder: str, rows: int, seed: int) -> str:
    """Write the dataset as CSV under `folder` (once: the file name carries rows and seed)."""
    path = os.path.join(folder, f"churn-{rows}-seed{seed}.csv")
    if not os.path.exists(path):
        os.makedirs(folder, exist_ok=True)
        frame, _ = generate_churn(rows, seed)
        tmp = path + ".tmp"
        frame.to_csv(tmp, index=False)
        os.replace(tmp, path)
    return path


def write_daily_churn(raw: str, days: list[dict], seed: int = 11) -> list[str]:
    """One CSV per day under raw/dt=<date>/ (the layout of conf/retrain.yaml's source). Each day is a dict
    {date, rows, drift?, label_noise?}; keys are unique across days. Returns the dates, in order."""
    first_id = 0
    for i, day in enumerate(days):
        folder = os.path.join(raw, f"dt={day['date']}")
        frame, _ = generate_churn(day["rows"], seed + i, drift=day.get("drift", 0.0),
                                  label_noise=day.get("label_noise", 0.0), first_id=first_id)
        first_id += day["rows"]
        os.makedirs(folder, exist_ok=True)
        tmp = os.path.join(folder, ".data.csv.tmp")
        frame.to_csv(tmp, index=False)
        os.replace(tmp, os.path.join(folder, "data.csv"))
    return [d["date"] for d in days]
