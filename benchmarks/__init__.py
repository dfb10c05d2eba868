# Benchmarks run as users' launches do (launch/__init__.py): freed host memory is kept, for the JAX
# and the PyTorch side alike, since both run in the one process (aajax.host_memory).
from aajax.host_memory import keep_freed_memory

HOST_MEMORY_KEPT = keep_freed_memory()
