import sys

from sandbox.process import main

sys.exit(main())
