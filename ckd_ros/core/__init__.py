"""ROS-free core of ckd_ros: model, checkpoints, tracker, and the data tools around them.

Importing ``ckd_ros.core`` imports neither rclpy nor torch; import the submodules you need
(``ckd_ros.core.model``, ``ckd_ros.core.tracker``, ``ckd_ros.core.api`` ...).
"""
