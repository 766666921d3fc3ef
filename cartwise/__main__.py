import sys

from cartwise.cli import main

sys.exit(main())
