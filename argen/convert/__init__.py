"""Official checkpoints -> argen modules. One module per family: ``argen.convert.llamagen``."""
from argen.convert.checkpoint import (
    WEIGHTS,
    Checkpoint,
    build_loaded,
    check_state_dict,
    load_into,
    read_state_dict,
    select_weights,
    source_name,
    unwrap,
)

__all__ = ["WEIGHTS", "Checkpoint", "build_loaded", "check_state_dict", "load_into", "read_state_dict",
           "select_weights", "source_name", "unwrap"]
