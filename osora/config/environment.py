"""Which OSORA_ environment variables a run may set: secrets and machine-local settings only.

Whatever changes what a stage produces is a param in params/*.yaml, where DVC tracks it: an
OSORA_<SECTION>__<KEY> variable changing such a key would change a stage's output behind DVC's
back, and a misspelled one would be ignored without a word. So the environment may set only the
keys of ENVIRONMENT_KEYS (credentials, endpoints, worker counts, devices: what differs from one
machine or job to the next), plus the OSORA_ variables that are no setting (OTHER_VARIABLES and
the key variable params/data.yaml names). `environment_errors` lists every other OSORA_
variable: an unknown one with the nearest valid name, a setting that changes outputs with the
params file that must hold it.
"""

import difflib
import types
import typing
from collections.abc import Iterable, Iterator, Mapping

from pydantic import BaseModel

from osora.config.base import sub_fields

ENV_PREFIX = "OSORA_"
ENV_DELIMITER = "__"

_DEVICE = ("the hardware this machine has; the params compute the same values on any device, "
           "up to floating-point rounding")

# dotted key of Settings → why it belongs to the machine or the job, not to the params
ENVIRONMENT_KEYS: dict[str, str] = {
    "store.uri": "where this machine keeps the tables (a folder or s3://); the rows are the same",
    "store.s3.endpoint_url": "the S3 service this machine reaches",
    "store.s3.region": "that S3 service's region",
    "store.s3.allow_http": "a plain-http S3 endpoint on this machine's network (local S3)",
    "store.s3.access_key_id": "a credential: never in a file",
    "store.s3.secret_access_key": "a credential: never in a file",
    "store.cache_dir": "where on this machine's disk the S3 files read are cached",
    "store.cache_max_gib": "how much of this machine's disk that cache may take",
    "tracking.uri": "the MLflow server this machine logs to",
    "tracking.experiment": "the MLflow experiment runs are filed under; what they compute is "
                           "the same",
    "launch.rdzv_endpoint": "the first node's host:port, known only when the job starts",
    "launch.rdzv_id": "the job's id (e.g. $SLURM_JOB_ID), known only when the job starts",
    "launch.backend": "how this cluster's ranks talk (nccl, gloo), not what they compute",
    "launch.node_launcher": "who starts the other nodes' agents on this cluster (srun or none)",
    "launch.max_restarts": "how often this cluster's failures are retried; a restarted stage "
                           "resumes from its checkpoint",
    "data.runner.backend": "a local pool or Ray: how rows are spread, never what they give",
    "data.runner.workers": "this machine's cores",
    "data.runner.ray_address": "the Ray cluster this machine reaches",
    "data.captions.openai.base_url": "where the captioning server runs; the model it must serve "
                                     "stays in params/data.yaml captions.openai.model",
    "data.captions.local.device": _DEVICE,
    "data.scores.aesthetic.device": _DEVICE,
    "ae.train.device": _DEVICE,
    "ae.eval.device": _DEVICE,
    "ae.latents.device": _DEVICE,
    "dit.text.embed_device": _DEVICE,
    "dit.train.device": _DEVICE,
    "dit.sample.device": _DEVICE,
}

# OSORA_ variables that are no setting: read by a tool or a test, never by load_settings
OTHER_VARIABLES: dict[str, str] = {
    "OSORA_CAPTION_API_KEY": "the captioning endpoint's key, by the name params/data.yaml "
                             "captions.openai.api_key_env gives by default",
    "OSORA_VBENCH_EXECUTABLE": "a real VBench install that tests/eval/test_vbench.py compares "
                               "osora's temporal flickering with",
    "OSORA_TEST_CAPTION_KEY": "the key tests/data/test_captions.py gives its fake endpoint",
}


def variable(key: str) -> str:
    """The variable of a dotted Settings key: store.s3.region → OSORA_STORE__S3__REGION."""
    return ENV_PREFIX + key.replace(".", ENV_DELIMITER).upper()


def setting_keys(model: type[BaseModel], prefix: str = "", metadata: tuple = ()) -> Iterator[str]:
    """Every leaf key of `model` as a dotted path: the keys a variable could name. A field whose
    type is (or may be) a model or a `params_of` dataclass is walked into; a mapping of models
    (bucket tables, latent sets) is one leaf, as it is one value."""
    for name, (annotation, field_metadata) in sub_fields(model, metadata).items():
        options = typing.get_args(annotation) if _is_union(annotation) else (annotation,)
        nested = [t for t in options if sub_fields(t, field_metadata)]
        if nested:
            yield from setting_keys(nested[0], f"{prefix}{name}.", field_metadata)
        else:
            yield prefix + name


def _is_union(annotation: object) -> bool:
    """`A | None` or Optional[A]: a model's field that may be null is still walked into."""
    return typing.get_origin(annotation) in (typing.Union, types.UnionType)


def environment_errors(environ: Mapping[str, str], keys: Iterable[str],
                       secrets: Iterable[str] = ()) -> list[str]:
    """One line per OSORA_ variable of `environ` the run must not take. `keys`: every Settings
    key (setting_keys); `secrets`: further variables the params name as holding a key."""
    by_variable = {variable(key): key for key in keys}
    allowed = {variable(key) for key in ENVIRONMENT_KEYS} | set(OTHER_VARIABLES)
    allowed |= {name.upper() for name in secrets}
    return [_refusal(name, environ[name], by_variable, allowed)
            for name in sorted(environ)
            if name.upper().startswith(ENV_PREFIX) and name.upper() not in allowed]


def _refusal(name: str, value: str, by_variable: dict[str, str], allowed: set[str]) -> str:
    key = by_variable.get(name.upper())
    if key is not None:
        section, rest = key.split(".", 1)
        return (f"environment {name}: {rest} changes what stages produce, so only "
                f"params/{section}.yaml sets it, where DVC tracks it: edit that file, or run "
                f"`dvc exp run -S params/{section}.yaml:{rest}={value}`")
    candidates = sorted(allowed | set(by_variable))  # sorted: ties name the same one each run
    nearest = difflib.get_close_matches(name.upper(), candidates, n=1, cutoff=0.0)[0]
    if nearest in allowed:
        return f"environment {name}: unknown; did you mean {nearest}?"
    section, rest = by_variable[nearest].split(".", 1)
    return (f"environment {name}: unknown; did you mean {nearest}? That one changes what stages "
            f"produce: set {rest} in params/{section}.yaml instead")
