"""SMS providers behind one interface (:mod:`bridge.upstreams.base`) and a registry."""
