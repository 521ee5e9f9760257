"""Official checkpoints -> argen modules. One module per family: ``argen.convert.llamagen``."""
from argen.convert.checkpoint import check_state_dict, load_into, read_state_dict, unwrap

__all__ = ["check_state_dict", "load_into", "read_state_dict", "unwrap"]
