"""MLPerf LoadGen over the preprocessed cache: ``harness`` drives LoadGen (the query sample
library and the SUT), ``cache_pass`` answers its queries with a backend, and
``accuracy_imagenet`` scores its accuracy log the way MLPerf's ImageNet tool does.
"""

from eval.loadgen.harness import LoadgenResult, run_loadgen

__all__ = ["LoadgenResult", "run_loadgen"]
