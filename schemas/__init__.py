"""The cattune data contract: records, Arrow schemas, phrase relations and their alignment."""

from cattune.schemas.arrow import (
    ANNOTATED_SCHEMA,
    EXAMPLE_SCHEMA,
    QUARANTINE_SCHEMA,
    arrow_schema,
    conform,
    from_table,
    schema_version_of,
    to_table,
)
from cattune.schemas.errors import (
    CattuneError,
    ConfigError,
    EndpointError,
    InputError,
    StoreError,
)
from cattune.schemas.manifest import ReleaseFile, ReleaseManifest, TrainingJob, file_sha256
from cattune.schemas.phrases import (
    Alignment,
    AlignmentProblem,
    PhraseRelation,
    align,
    find_occurrences,
    parse_phrase_relations,
)
from cattune.schemas.records import (
    SCHEMA_VERSION,
    AnnotatedExample,
    Annotation,
    Example,
    Meta,
    QuarantinedExample,
    Relation,
    Span,
    example_id,
)
from cattune.schemas.settings import cattune_home

__all__ = [
    "ANNOTATED_SCHEMA",
    "EXAMPLE_SCHEMA",
    "QUARANTINE_SCHEMA",
    "SCHEMA_VERSION",
    "Alignment",
    "AlignmentProblem",
    "AnnotatedExample",
    "Annotation",
    "CattuneError",
    "ConfigError",
    "EndpointError",
    "Example",
    "InputError",
    "Meta",
    "PhraseRelation",
    "QuarantinedExample",
    "Relation",
    "ReleaseFile",
    "ReleaseManifest",
    "Span",
    "StoreError",
    "align",
    "cattune_home",
    "arrow_schema",
    "conform",
    "example_id",
    "file_sha256",
    "find_occurrences",
    "from_table",
    "parse_phrase_relations",
    "schema_version_of",
    "to_table",
    "TrainingJob",
]
