import sys

from argen.cli import main

sys.exit(main())
