"""
imgrelay-cache: the service beside C{criu restore}, the link that receives
and verifies images, the memory bound, the session registry and
directories, and the fetch socket.
"""
