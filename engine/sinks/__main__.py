import sys

from engine.sinks.process import main

sys.exit(main())
