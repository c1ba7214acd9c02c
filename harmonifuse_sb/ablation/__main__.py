"""``python -m harmonifuse_sb.ablation``: runs the study (see ``cli``)."""

import sys

from harmonifuse_sb.ablation.cli import main

sys.exit(main())
