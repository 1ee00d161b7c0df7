"""The command-line tools of ckd_ros, above both layers: ``ckd-eval`` (:mod:`ckd_ros.cli.eval`) and
``ckd-bag`` (:mod:`ckd_ros.cli.bag`).

They import the ROS-free core (:mod:`ckd_ros.core`), and ``ckd-bag play`` the ROS layer
(:mod:`ckd_ros.ros.bag_play`, when it runs); neither layer imports this package.
"""
