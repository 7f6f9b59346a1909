// The parts of three.js the page uses (render/html/page.js reads them as THREE.*); esbuild leaves out the rest.
export {
  BufferAttribute, BufferGeometry, ColorManagement, DataTexture, LinearSRGBColorSpace, LineSegments,
  LineBasicMaterial, NearestFilter, NoColorSpace, PerspectiveCamera, Points, RGBAFormat, Scene,
  ShaderMaterial, UnsignedByteType, Vector3, WebGLRenderer,
} from 'three';
export { OrbitControls } from 'three/addons/controls/OrbitControls.js';
