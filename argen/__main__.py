"""`python -m argen`: the CLI. Run from a source checkout, ``-m`` puts the checkout's root first on
sys.path, where its ``tokenizers/`` folder (installed as ``argen.tokenizers``) would hide Hugging Face's
``tokenizers`` library from transformers (which diffusers imports): the root is dropped first, as the
installed ``argen`` command never has it."""
import sys
from pathlib import Path

if sys.path and (Path(sys.path[0] or ".") / "tokenizers" / "palette.py").is_file() \
        and (Path(sys.path[0] or ".") / "argen" / "cli.py").is_file():
    del sys.path[0]

from argen.cli import main  # noqa: E402

sys.exit(main())
