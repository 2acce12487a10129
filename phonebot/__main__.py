import sys

from phonebot.cli import main

sys.exit(main())
