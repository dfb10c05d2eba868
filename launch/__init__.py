# Every `python -m launch.<script>` starts here, before any JAX computation: reuse XLA:CPU's scratch
# memory between runs instead of faulting it in anew (aajax.host_memory).
from aajax.host_memory import keep_freed_memory

keep_freed_memory()
