"""``python -m data_prep data_prep=<source> input=<path>``: see `data_prep.prepare`."""

from data_prep.prepare import main

main()
