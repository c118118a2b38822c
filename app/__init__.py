"""headserve.app: the `headserve` command line and its drivers (demo, bench), on top of the library.

The library (headserve, headserve.train, headserve.export, headserve.client) takes typed configs and
raises typed errors that name values; this package alone knows flags. As open_clip keeps
``open_clip_train`` apart from ``open_clip``, nothing in the library imports from here.
"""
