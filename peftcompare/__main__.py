import sys

from peftcompare.cli import main

sys.exit(main())
