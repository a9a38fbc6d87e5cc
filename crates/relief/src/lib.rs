//! relief: turns one picture into a textured, watertight 3D model by inflating the
//! object's silhouette. Picture bytes and options in, GLB bytes and statistics out.
