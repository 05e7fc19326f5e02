"""Validate: parse raw columns to their declared types and give every bad row one reason.

A pure DataFrame -> DataFrame step. The output has the typed columns, the raw `_corrupt_record` and `_reason`, null for a
good row. Reasons, first match wins, in this order:
  malformed          the line did not parse (wrong field count, broken JSON)
  wrong_type:<col>   a value that does not parse as the declared type
  derived:<col>      a derived column (etl.derived) whose value does not cast to its type, or is null
                     where the column is not nullable (its expression failed, or an input was null)
  null:<col>         a null in a column declared nullable: false (the label and key are never nullable)
  nonfinite:<col>    NaN or +-inf in a numeric or array feature, or in a regression label
  bad_length:<col>   an array whose length differs from array_length
  bad_label          a label outside etl.label.values
  (later, in etl.pipeline: unseen_label, a class the train split lacks, when multiclass classes are fitted)
"""
from __future__ import annotations

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from ringtrain.etl.sources import CORRUPT, SPARK_TYPES
from ringtrain.config import ColumnSpec, DerivedColumn, LabelConfig
from ringtrain.errors import ConfigError

REASON = "_reason"
_DERIVED_REASON = "_derived_reason"
_NUMERIC = ("double", "float", "int", "long")


def _parsed(spec: ColumnSpec, raw: Column) -> Column:
    if spec.type == "array<float>":
        return F.from_json(raw, T.ArrayType(T.FloatType()))
    if spec.type in ("int", "long"):
        # A plain cast (ANSI off) takes '3.7' as 3: an integer has no decimal point. Otherwise the cast is the
        # check: it accepts only spaces, a sign and digits, and gives null on overflow. (A regular expression
        # said the same and made the first pass about a sixth slower.)
        return F.when(~raw.contains("."), raw.cast(SPARK_TYPES[spec.type]))
    if spec.type == "boolean":
        lowered = F.lower(F.trim(raw))
        return F.when(lowered.isin("true", "1"), F.lit(True)).when(lowered.isin("false", "0"), F.lit(False))
    return raw.cast(SPARK_TYPES[spec.type])


def parse_and_validate(df: DataFrame, columns: list[ColumnSpec], label: LabelConfig | None, *,
                       raw_strings: bool, key: str, derived: list[DerivedColumn] = ()) -> DataFrame:
    """Typed columns plus `_reason`; `raw_strings` says the input columns are unparsed text.

    `columns` are all declared columns; those named in `derived` are computed from the typed source
    columns (a bad expression raises ConfigError here, before any row is read). `label` None: rows to
    score, which have no label to check."""
    typed, checks = [], [(F.col(CORRUPT).isNotNull(), F.lit("malformed"))]
    derived_names = {d.name for d in derived}
    for spec in (c for c in columns if c.name not in derived_names):
        raw = F.col(spec.name)
        value = _parsed(spec, raw) if raw_strings else raw.cast(SPARK_TYPES[spec.type])
        if raw_strings:
            empty = raw.isNull() | (F.trim(raw) == "")
            checks.append((~empty & value.isNull(), F.lit(f"wrong_type:{spec.name}")))
            value = F.when(~empty, value)
        typed.append(value.alias(spec.name))
    nulls, values = [], []
    for spec in columns:
        col = F.col(spec.name)
        # A derived column's nulls are reported as derived:<name> (see _with_derived).
        never_null = (label.column if label else key, key)
        if spec.name not in derived_names and (not spec.nullable or spec.name in never_null):
            nulls.append((col.isNull(), F.lit(f"null:{spec.name}")))
        if spec.role in ("numeric", "array") and spec.type in _NUMERIC + ("array<float>",):
            if spec.type == "array<float>":
                bad = F.exists(col, lambda x: F.isnan(x) | (F.abs(x) == float("inf")))
                values.append((col.isNotNull() & bad, F.lit(f"nonfinite:{spec.name}")))
                values.append((col.isNotNull() & (F.size(col) != spec.array_length),
                               F.lit(f"bad_length:{spec.name}")))
            elif spec.type in ("double", "float"):
                values.append((_nonfinite(col), F.lit(f"nonfinite:{spec.name}")))
        elif (label is not None and spec.name == label.column and label.task == "regression"
              and spec.type in ("double", "float")):
            # A NaN target would make the loss NaN on every step that reads it.
            values.append((_nonfinite(col), F.lit(f"nonfinite:{spec.name}")))
    if label is not None and label.values is not None:
        values.append((F.col(label.column).isNotNull() & ~F.col(label.column).cast("string").isin(*label.values),
                       F.lit("bad_label")))
    # Parse checks look at raw columns; the others at typed ones, so they run after the select.
    stage1 = df.select(*typed, F.col(CORRUPT), _first_reason(checks).alias(REASON))
    stage2, derived_checks = _with_derived(stage1, columns, derived, label, key)
    later = _first_reason(derived_checks + nulls + values)
    checked = stage2.withColumn(REASON, F.coalesce(F.col(REASON), later))
    return checked.drop(_DERIVED_REASON) if derived else checked


def _with_derived(typed: DataFrame, columns: list[ColumnSpec], derived: list[DerivedColumn], label: LabelConfig,
                  key: str) -> tuple[DataFrame, list[tuple[Column, Column]]]:
    """All declared columns in their declared order, the derived ones computed from the typed source
    columns; and the checks that give `derived:<name>`."""
    if not derived:
        return typed, []
    specs = {c.name: c for c in columns}
    exprs, checks = {}, []
    for i, d in enumerate(derived):
        try:
            value = F.expr(d.expr)
            typed.select(value)  # analysis is eager: an unknown column or a syntax error fails here
        except Exception as exc:  # pyspark's ParseException / AnalysisException
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConfigError(
                f"etl.derived[{i}] ({d.name}): expression {d.expr!r} does not work on the source: {first}. "
                f"It may use the source columns {', '.join(c.name for c in columns if c.name in typed.columns)}"
                f" (as parsed to their declared types)") from None
        cast = value.cast(SPARK_TYPES[d.type])
        exprs[d.name] = cast
        must_have = not specs[d.name].nullable or d.name in (label.column, key)
        failed = cast.isNull() & (value.isNotNull() | F.lit(must_have))
        # A row that failed parsing already has its reason; the expression saw nulls there.
        checks.append((failed, F.lit(f"derived:{d.name}")))
    out = [exprs[c.name].alias(c.name) if c.name in exprs else F.col(c.name) for c in columns]
    # The checks read the source columns, so they are evaluated in the same select as the values.
    checked = typed.select(*out, F.col(CORRUPT), F.col(REASON), _first_reason(checks).alias(_DERIVED_REASON))
    return checked, [(F.col(_DERIVED_REASON).isNotNull(), F.col(_DERIVED_REASON))]


def _nonfinite(col: Column) -> Column:
    return F.isnan(col) | (F.abs(col) == float("inf"))


def _first_reason(checks: list[tuple[Column, Column]]) -> Column:
    if not checks:
        return F.lit(None).cast("string")
    expr = F.when(checks[0][0], checks[0][1])
    for cond, reason in checks[1:]:
        expr = expr.when(cond, reason)
    return expr
