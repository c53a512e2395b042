import sys

from medimg.cli import main

sys.exit(main())
