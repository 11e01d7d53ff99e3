"""Scale-out on Ray Serve (`webui.py --ray`): the front process serves the same FastAPI app and
hands generation jobs to N worker replicas, each an unchanged engine (docs/scale-out.md).

    board.py    JobBoard: the named actor where replicas publish each task's progress and preview
                and read its interrupt / skip / stop flags; the front reads it for /progress
    replica.py  EngineReplica: the Serve deployment; one engine built by the composition root per
                replica, checkpoints loaded through Serve's model multiplexing
    front.py    RayEngine: the `Engine` the adapters get with --ray; forwards jobs to the replicas
    cluster.py  connect to (or start) the Ray cluster, deploy the replicas, build the RayEngine

Ray is imported only here, and this package only with --ray: the single-process server never
needs it.
"""
