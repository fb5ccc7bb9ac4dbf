"""Prompt upsampling: rewrite a short prompt into the detailed description FLUX follows best."""
