// Entry point: the router, the language, the app. Nothing heavy is imported here: the
// 3D viewer (three.js) is loaded by the task page when a model is ready.
import { createApp } from 'vue'
import App from './App.vue'
import { router } from './router'
import { locale, setLocale } from './i18n'
import './style.css'

setLocale(locale.value)
createApp(App).use(router).mount('#app')
