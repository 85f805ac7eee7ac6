from core import distributed
from core.cli import main

distributed.exit_process(main())
