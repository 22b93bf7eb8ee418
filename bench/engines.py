"""The local Beam engines the benchmarks run on, and why one may be missing."""

import dataclasses
from typing import List, Optional, Tuple

ENGINE_NAMES = ("fnapi", "streaming", "prism", "flink")

# Why Flink never runs here: the Flink runner needs Beam's Flink job server
# jar, and the Maven registry reachable from the benchmark machine does not
# serve it.
FLINK_UNAVAILABLE = (
    "no Beam Flink job server jar is available from the reachable Maven registry, "
    "so Flink cannot start here"
)


@dataclasses.dataclass(frozen=True)
class Engine:
    """A runner configuration: its flags, or the reason it cannot run here."""

    name: str
    description: str
    pipeline_args: Tuple[str, ...] = ()
    unavailable: Optional[str] = None


def _prism_engine() -> Engine:
    from runners import prism

    description = "PrismRunner (LOOPBACK)"
    try:
        # Returns the cached binary when there is one; builds it with Go otherwise.
        location = prism.prism_path()
    except (ValueError, prism.PrismBuildError) as error:
        return Engine("prism", description, unavailable=f"Prism is not available: {error}")
    return Engine("prism", description, tuple(prism.prism_pipeline_args(location)))


_FACTORIES: dict = {
    "fnapi": lambda: Engine("fnapi", "FnApiRunner (DirectRunner, batch)", ("--runner=DirectRunner",)),
    "streaming": lambda: Engine(
        "streaming", "BundleBasedDirectRunner (DirectRunner --streaming, TestStream)",
        ("--runner=DirectRunner", "--streaming"),
    ),
    "prism": _prism_engine,
    "flink": lambda: Engine("flink", "FlinkRunner", unavailable=FLINK_UNAVAILABLE),
}


def resolve_engines(names: List[str]) -> List[Engine]:
    """Return the engines for ``names`` (see ENGINE_NAMES), in that order."""
    engines = []
    for name in names:
        if name not in _FACTORIES:
            raise ValueError(
                f"--engines has the unknown engine {name!r}: expected a comma-separated "
                f"subset of {','.join(ENGINE_NAMES)}, for example --engines=fnapi,prism."
            )
        engines.append(_FACTORIES[name]())
    return engines
