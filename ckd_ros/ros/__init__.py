"""The ROS 2 layer of ckd_ros (imports rclpy): the tracker lifecycle node and its helpers.

``node`` (the node and ``main``), ``params`` (parameter table and validation), ``conversions``
(messages <-> arrays), ``synchronizer`` (paired image subscriptions), ``diagnostics`` (statistics and
/diagnostics); the debug view is drawn by ``ckd_ros.core.visualize``.  ``bag_play`` belongs to the evaluation tools.
"""
