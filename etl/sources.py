"""Extract: read the configured source as raw columns, and refuse schema drift by name.

Text formats (CSV, JSON lines) are read with every declared column as a string, plus Spark's
corrupt-record column: parsing to the declared types happens in `etl.validate`, so a value that
does not parse is quarantined with its reason instead of silently becoming null.
"""
from __future__ import annotations

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from ringtrain.config import ColumnSpec, SourceConfig
from ringtrain.errors import ConfigError, SchemaDriftError, SourceNotFound

CORRUPT = "_corrupt_record"

SPARK_TYPES = {
    "double": T.DoubleType(), "float": T.FloatType(), "int": T.IntegerType(), "long": T.LongType(),
    "string": T.StringType(), "boolean": T.BooleanType(), "array<float>": T.ArrayType(T.FloatType()),
}


def csv_header(spark: SparkSession, source: SourceConfig, path: str) -> list[str]:
    """The column names of the CSV at `path`, from its header line."""
    return spark.read.options(**{"header": "true", **source.options}).csv(path).columns


def source_path(source: SourceConfig, partition: str | None) -> str:
    path = source.path or ""
    if "{partition}" in path:
        if partition is None:
            raise ConfigError(f"etl.source.path {path} contains {{partition}}: pass --partition VALUE")
        path = path.replace("{partition}", partition)
    return path


def read_source(spark: SparkSession, source: SourceConfig, columns: list[ColumnSpec],
                partition: str | None = None, header: list[str] | None = None) -> DataFrame:
    """Return a DataFrame with exactly the declared columns (raw) plus CORRUPT (null when fine). `header`: a
    CSV's column names when the caller has read them already (`csv_header`; reading them is a Spark job)."""
    names = [c.name for c in columns]
    if source.format in ("csv", "json"):
        path = source_path(source, partition)
        _check_path_exists(spark, path)
        if source.format == "csv":
            _check_names(header if header is not None else csv_header(spark, source, path), names, path)
        raw_schema = T.StructType([T.StructField(n, T.StringType()) for n in names]
                                  + [T.StructField(CORRUPT, T.StringType())])
        reader = spark.read.schema(raw_schema).options(
            mode="PERMISSIVE", columnNameOfCorruptRecord=CORRUPT, **source.options)
        if source.format == "csv":
            return reader.option("header", "true").option("enforceSchema", "false").csv(path)
        return reader.json(path)
    if source.format == "table":
        df = spark.table(source.table)
        where = f"table {source.table}"
        if source.partition_column:
            if partition is None:
                raise ConfigError(f"etl.source.partition_column is {source.partition_column!r}: "
                                  f"pass --partition VALUE to say which rows to read")
            _check_names(df.columns, names, where)
            df = df.where(F.col(source.partition_column).cast("string") == partition)
            where = f"{where} ({source.partition_column} = {partition!r})"
    else:
        path = source_path(source, partition)
        _check_path_exists(spark, path)
        df = spark.read.options(**source.options).format(source.format).load(path)
        where = path
    _check_names(df.columns, names, where)
    for spec in columns:
        actual = df.schema[spec.name].dataType
        expected = SPARK_TYPES[spec.type]
        if not _compatible(actual, expected):
            raise SchemaDriftError(
                f"{where}: column {spec.name!r} has type {actual.simpleString()} but etl.columns declares "
                f"{spec.type!r}; fix the declaration or the source")
    return df.select(*names, F.lit(None).cast("string").alias(CORRUPT))


def _compatible(actual: T.DataType, expected: T.DataType) -> bool:
    if actual == expected:
        return True
    widening = {T.IntegerType: (T.LongType, T.DoubleType, T.FloatType), T.FloatType: (T.DoubleType,),
                T.LongType: (T.DoubleType,), T.ShortType: (T.IntegerType, T.LongType, T.DoubleType),
                T.DoubleType: (T.FloatType,)}
    if isinstance(actual, T.ArrayType) and isinstance(expected, T.ArrayType):
        return isinstance(actual.elementType, (T.FloatType, T.DoubleType))
    return any(isinstance(expected, t) for t in widening.get(type(actual), ()))


def _check_names(actual: list[str], declared: list[str], where: str) -> None:
    missing = [n for n in declared if n not in actual]
    extra = [n for n in actual if n not in declared and n != CORRUPT]
    if missing:
        raise SchemaDriftError(f"{where}: declared column {missing[0]!r} is missing from the source "
                               f"(source has: {', '.join(actual)}); fix etl.columns or the source")
    if extra:
        raise SchemaDriftError(f"{where}: the source has a column {extra[0]!r} that etl.columns does not "
                               f"declare; declare it (role: ignore to drop it) or fix the source")


def _check_path_exists(spark: SparkSession, path: str) -> None:
    jvm = spark.sparkContext._jvm
    hpath = jvm.org.apache.hadoop.fs.Path(path)
    fs = hpath.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
    if not fs.globStatus(hpath):
        raise SourceNotFound(f"etl.source.path {path} does not exist; check the path (and the partition, if any)")
