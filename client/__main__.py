import sys

from client.predict import main

sys.exit(main())
