"""dispy 4.15's web monitor (``dispy.httpd``): not in this release.

Importing it fails at once with that reason, rather than later with an AttributeError.
"""

raise ImportError(
    "dispy.httpd: the web monitor of dispy 4.15 comes in a later release of dispy; "
    "use cluster.print_status() or a cluster_status callback meanwhile"
)
