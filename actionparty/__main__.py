import sys

from actionparty.cli import main

sys.exit(main())
