"""The web playground at ``/``: a small static page over the BFL API."""
