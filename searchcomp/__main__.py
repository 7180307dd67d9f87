import sys

from searchcomp.cli import main

sys.exit(main())
