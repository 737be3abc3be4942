"""Python for the layout in deploy/: the shipped nginx site run from this checkout
(``deploy.proxy``) and a private CA made for the occasion (``deploy.tls``), shared by the tests
and the fleet benchmark (``python -m bench --proxy nginx``)."""
