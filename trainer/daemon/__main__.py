"""`python -m trainer.daemon RUN_DIR`: the daemon process (started by `launch_daemon`)."""
import sys

from trainer.daemon.launch import main

sys.exit(main())
