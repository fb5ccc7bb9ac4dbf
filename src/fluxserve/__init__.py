"""fluxserve: a self-hosted server for FLUX image models.

Importing this package imports no torch; only ``fluxserve.runtime`` does.
"""

__version__ = "0.1.0"
