"""The generator of stage one: tiny SD-like base, loading SD/ControlNet parts, control images, sampling."""
