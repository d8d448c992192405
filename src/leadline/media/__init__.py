"""Inbound media: fetched from the provider by a job (:mod:`.fetch`), noted in ``media_files``
(:mod:`.records`), kept in a :class:`~leadline.media.storage.MediaStorage`, served at ``/v1/media/{id}``.

Nothing is re-exported here: :mod:`leadline.pipeline.inbound` imports :mod:`.records`, and :mod:`.fetch`
imports the outbound pipeline, which imports the inbound one.
"""
